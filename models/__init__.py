"""arvid.models"""
