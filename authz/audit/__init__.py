"""Proof of control: records, the hash chain, the trail, receipts, disclosures."""
