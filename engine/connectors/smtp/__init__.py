"""Secure messaging: SMTP with S/MIME (`smtp` source, `secure_mail` destination)."""
