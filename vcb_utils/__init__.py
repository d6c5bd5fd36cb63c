"""Video-ColBERT: late-interaction text-to-video retrieval on open_clip."""
