"""Knowledge infusion: the synthetic knowledge world and the sweep's analysis (collapse points, scaling law)."""
