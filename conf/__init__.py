"""mnistexp's Hydra configs; installed as the package `mnistexp.conf` (Hydra reads `pkg://mnistexp.conf`)."""
