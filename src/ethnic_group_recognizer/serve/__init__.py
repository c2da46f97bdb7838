"""HTTP serving: the REST API, the web app, the Gradio-compatible routes and the review UI."""
