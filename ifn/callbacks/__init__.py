"""Lightning callbacks: breeding (SPEC §5) and visualisation."""
