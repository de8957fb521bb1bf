"""Installing ``promises`` installs ``promise`` (``from promise import Promise``)."""
