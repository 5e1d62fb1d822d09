"""Cross-view hand matching on 11k Hands: dorsal queries against a palmar gallery."""
