"""Cross-facility sharing: the master patient index, patient Consent, notifications and Subscriptions."""
