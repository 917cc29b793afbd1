//! GPT-style family: learned absolute positions, LayerNorm, GELU (tanh) MLP.
