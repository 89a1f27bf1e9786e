"""The Streamlit dashboard: admins watch account states and act, auditors read (issue 4)."""
