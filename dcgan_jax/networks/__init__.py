"""The generators and discriminators (Flax linen) and their kernels."""
