"""Enrollment: what happens to a node between its first boot and its profile's image.

- :mod:`.fingerprint`: pure: an inventory against the profiles -> the best profile, its
  score and why (``provisioner profile match --explain`` prints it);
- :mod:`.scaffold`: pure: a dump -> a profile YAML that matches it (``profile new``);
- :mod:`.matching`: an inventory arrives -> the node is fingerprinted, named, matched;
- :mod:`.power_cycle`: ``provisioner enroll --power-cycle``: power a node on (or cycle
  it), follow its boot until it has an inventory and a profile.
"""
