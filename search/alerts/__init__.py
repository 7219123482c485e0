"""Saved searches (alerts): queries kept in the index's SQLite store, matched against every write's new articles in
the write's own transaction, and delivered as Atom feeds, webhooks and a web page (issue 21)."""
