"""Lightning callbacks: image grids, the test-metrics file and θ-per-face predictions."""
