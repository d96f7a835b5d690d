"""Speed and memory sweeps against sequence resolution (tokens = T x H x W), CSV + matplotlib plots."""
