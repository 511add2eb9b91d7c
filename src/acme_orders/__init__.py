"""acme_orders"""
