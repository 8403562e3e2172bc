"""Transfer learning: pretrained backbones, cached bottleneck features, parameter groups,
importance weights for source instances and feature-alignment losses."""
