"""The kernel model: version and era, pv_ops slots, paravirt sites, Xen notes."""
