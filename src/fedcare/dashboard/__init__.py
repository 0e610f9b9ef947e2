"""The dashboard (coordinating centre), the site console and the tracking exporters (apps layer)."""
