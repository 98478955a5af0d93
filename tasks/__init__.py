"""arvid.tasks"""
