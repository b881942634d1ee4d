"""Motion simulator, dataset loaders, training and evaluation."""
