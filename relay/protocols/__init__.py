"""Sans-IO wire formats: what Mailchimp and Mandrill send, and how relay signs what it sends."""
