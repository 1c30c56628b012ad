"""polyclap model library: audio/text encoders, contrastive losses, gradient cache."""
