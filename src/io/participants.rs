//! BIDS participants.tsv: participant_id plus a group column the user names.
