"""The ketamine knowledge, pure: see README.md in this folder for the rule it keeps."""
