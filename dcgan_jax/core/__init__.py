"""What the training loop is made of: the GAN state, the pure step, the run
directory, G -> images."""
