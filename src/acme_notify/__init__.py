"""acme_notify"""
