"""SFTP: a polling source (lab drop folders) and an atomic-write destination."""
