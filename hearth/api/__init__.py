"""The Containers API: wire models shared by client and local server, the client, its dialects."""
