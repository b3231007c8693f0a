"""voicedashd: AI voice bot beside a PBX with a live per-extension call dashboard."""

__version__ = "0.1.0"
