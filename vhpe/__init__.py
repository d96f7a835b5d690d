"""The video human pose estimation pipeline: formats, heatmap codec, metrics, data, training, inference, demo."""
