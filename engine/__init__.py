"""Passerelle: the integration engine of a national eHealth platform."""
