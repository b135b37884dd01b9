"""Steps: one file each, the file name is the YAML `type`. Pure functions of a Message."""
