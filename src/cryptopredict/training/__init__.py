"""Training of the deep models: windows, losses, the loop, Ray Train and Ray Tune."""
