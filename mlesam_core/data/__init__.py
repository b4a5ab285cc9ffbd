"""Data sets (DELIVER, MUSES, MCubeS), the procedural scene generator, transforms and collation."""
