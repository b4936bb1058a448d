"""What a run costs: FLOPs, bytes moved, energy, and what the server can reconstruct."""
