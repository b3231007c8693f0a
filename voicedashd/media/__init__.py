"""RTP media: port allocation, sessions, codecs."""
