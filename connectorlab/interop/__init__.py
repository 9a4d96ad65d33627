"""Connectorlab models to and from the Hugging Face ecosystem's layouts."""
