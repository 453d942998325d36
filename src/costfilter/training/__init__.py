"""What every method's fit step shares: the job types, the bank builder, the one training loop
and its reports. Outside the models, which stay plain ``nn.Module``s; imports no method."""
