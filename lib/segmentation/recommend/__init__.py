"""Stage `recommend`: what each segment buys, as lists to act on, and how well they predict."""
