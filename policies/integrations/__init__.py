"""recurrl backbones inside other libraries' policies (sb3-contrib's RecurrentPPO: `sb3`)."""
