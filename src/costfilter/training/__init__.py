"""Training loops and losses: outside the models, which stay plain ``nn.Module``s."""
