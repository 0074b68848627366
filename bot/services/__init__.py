"""Use cases. Each public function owns one transaction (or a few, in a stated order)."""
