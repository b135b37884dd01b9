"""Notifiable-disease (DOMI) reporting: catalogue, detection, cases, the feed, aggregates."""
