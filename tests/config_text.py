"""The smallest valid voicedashd TOML, for unit tests that append the sections they test."""

MINIMAL = """
[sip]
listen = "127.0.0.1:5999"
[api]
listen = "127.0.0.1:5998"
[hub]
listen = "127.0.0.1:5997"
[store]
path = "store.sqlite3"
[[tenants]]
name = "acme"
"""
