"""Referrals (issue 45): a referring practice sends a lesion (images, the weighted 7-point checklist, the
urgency it asks for), the clinic's dermatologist triages the open referrals by risk and answers; the practice
sees the answer."""
