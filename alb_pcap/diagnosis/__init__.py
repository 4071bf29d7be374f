"""Diagnosis: roles and pairing, detectors, connect failures, proxy software, selection, scoring."""
