"""The `openai` backend: photos labelled by inference servers that speak the OpenAI chat API.
"""
