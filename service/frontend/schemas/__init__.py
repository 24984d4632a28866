"""Request and response models of each protocol, validated at the HTTP boundary."""
