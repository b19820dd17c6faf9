"""The Gradio page: the page and its Write tab (page.py), the inside view (inside.py), the Train tab
(train_tab.py, its handlers train_handlers.py), and the session patch (session_state_patch.py).
"""
