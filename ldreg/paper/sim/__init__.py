"""Small, exact simulations of the paper: the squeezing effect and the digits eNTK."""
