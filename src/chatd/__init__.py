"""chatd: a chatbot server with the production checklist done."""
